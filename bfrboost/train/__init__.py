"""Training the InfoBFR refiner: degradation, data, cache of base outputs, losses, the loop."""
