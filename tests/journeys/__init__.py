"""End-to-end journeys of a user and reliability scenarios (faults, crafted input), across modules."""
