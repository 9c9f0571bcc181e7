"""Files that lazygen trains itself and ships: tiny model weights, evaluators, reference statistics."""
