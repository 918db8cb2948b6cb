"""Model families: ensembles of networks with stacked parameters, behind one seam.

    EnsembleModel            the protocol every family implements (bnrank.models.family)
    EnsembleMLP              model.kind "mlp": fully connected ReLU or linear nets
    EnsembleLeakyResNet      model.kind "leaky-resnet": Leaky ResNets (effective depth L̃)
    FAMILIES, build_model    the registry by model.kind
"""

from bnrank.models.ensemble import EnsembleMLP
from bnrank.models.leaky_resnet import EnsembleLeakyResNet
from bnrank.models.family import HOMOGENEOUS, LAYER_STEPS, LAYERED_PRODUCT, EnsembleModel, LayerKey, Site
from bnrank.models.registry import FAMILIES, build_model, family

__all__ = ["EnsembleMLP", "EnsembleLeakyResNet", "EnsembleModel", "HOMOGENEOUS", "LAYER_STEPS", "LAYERED_PRODUCT", "LayerKey", "Site", "FAMILIES",
           "build_model", "family"]
