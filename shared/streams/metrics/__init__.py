"""Sensor metrics (seed 003): one record per asset and timestamp with named readings, scored as sliding windows."""
