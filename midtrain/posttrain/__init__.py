"""Posttraining: supervised fine-tuning (SFT) with forgetting measurement, and offline evaluation."""
