"""Training engine: binary networks on MTJ crossbars, trained defect-unaware, HAT and SAT."""
