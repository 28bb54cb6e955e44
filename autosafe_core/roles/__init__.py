"""The five roles of the method, each a versioned prompt, an output schema and its checks:
`scenario_generator`, `simulator` (environment), `agent`, `evaluator` (safety, and
helpfulness beside it) and `reflector`; `base` holds what they share.
"""
