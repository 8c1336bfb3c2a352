"""Delayed labels: predictions remembered under ids, learned once their labels come back."""
