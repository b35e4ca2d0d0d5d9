"""Hard-negative mining: MM-Embed's modality-aware rule for M-BEIR data, a rank window for text."""

from mmembed.mining.miner import MiningConfig, MiningResult, MiningStats, mine_beir, mine_mbeir, stats_table
from mmembed.mining.rule import NEGATIVE_TYPES, NegativeRule, modality_aware_negatives, window_negatives

__all__ = ["NEGATIVE_TYPES", "MiningConfig", "MiningResult", "MiningStats", "NegativeRule", "mine_beir",
           "mine_mbeir", "modality_aware_negatives", "stats_table", "window_negatives"]
