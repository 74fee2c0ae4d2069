"""Galactic/extragalactic vetting: classifier, active-learning loop, labelling, experiments."""
