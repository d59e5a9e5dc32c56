"""Sparse-NCNet (Rocco et al., ECCV 2020): top-k sparse correlation, submanifold 4D consensus, relocalization."""
