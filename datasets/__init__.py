"""Dataset readers (plain RGB-D folder, TUM RGB-D, InLoc) and the synthetic building generator."""
