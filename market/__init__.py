"""Market side: rule sets, bids, clearing simulator, OpenADR, baselines and settlement."""
