"""The five roles of the method, each a versioned prompt, an output schema and its checks:
`scenario_generator`, `simulator` (environment), `agent`, `evaluator` (safety, and
helpfulness beside it) and `reflector`; `base` holds what they share.
"""


def prompt_versions() -> dict[str, str]:
    """role -> version of the prompt it uses now: what a run records as its prompts."""
    from autosafe_core.roles import agent, evaluator, reflector, scenario_generator, simulator

    return {
        scenario_generator.ROLE: scenario_generator.prompt().version,
        agent.ROLE: agent.prompt().version,
        simulator.ROLE: simulator.prompt().version,
        evaluator.ROLE: evaluator.safety_prompt().version,
        evaluator.HELPFULNESS_ROLE: evaluator.helpfulness_prompt().version,
        reflector.ROLE: reflector.prompt().version,
    }
