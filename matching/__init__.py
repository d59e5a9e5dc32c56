"""NCNet dense matching: features, 4D correlation, neighbourhood consensus, match extraction."""
