"""Training and data generation: ``atomsim train`` and ``atomsim datagen``."""
