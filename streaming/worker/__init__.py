"""The worker's steps (score, learn), its runtime and its Faust transport."""
