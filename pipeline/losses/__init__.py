"""CoDiEmb's losses: pure functions of embeddings and labels (the training loop owns the model)."""

from pipeline.losses.cosent import cosent_loss
from pipeline.losses.gather import gather_with_grad, world_info
from pipeline.losses.ir import multi_positive_info_nce
from pipeline.losses.midnce import mid_nce_loss
from pipeline.losses.pearson import pearson_loss
from pipeline.losses.pro import pro_loss
from pipeline.losses.rankkl import rank_kl_loss
from pipeline.losses.sts import sts_loss

__all__ = [
    "cosent_loss",
    "gather_with_grad",
    "mid_nce_loss",
    "multi_positive_info_nce",
    "pearson_loss",
    "pro_loss",
    "rank_kl_loss",
    "sts_loss",
    "world_info",
]
