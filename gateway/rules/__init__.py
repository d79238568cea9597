"""What a prompt may hold: the seed's modality notation, each model's rule, item limits."""
