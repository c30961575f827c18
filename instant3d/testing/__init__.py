"""Tiny random models, analytic scenes and random priors in their real folder layouts, for tests,
benchmarks and smoke runs (as ``diffusers.utils.testing_utils``): not used by the engine itself."""
