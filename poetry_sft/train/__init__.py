"""Training: the SFT run (sft), its eval callback (callbacks), checks before anything loads (preflight),
the Hydra train command (command), and sweeps (sweep, sweep_report)."""
