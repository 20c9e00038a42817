"""Fleet: the appliance's side of fleet management: its state reported, signed jobs run, desired models kept."""
