"""mini-swe-agent's model client for the VM tests: mini's own OpenRouter client (plain
``requests``, OpenAI chat completions with the ``bash`` tool) sent to the scripted model
server at ``$SCRIPTED_MODEL_URL`` instead of openrouter.ai. mini's default client goes
through litellm, whose import alone outlasts the test under the VM's emulation; the
part under test, the agentcg environment class, is the same whichever client asks."""

import os

from minisweagent.models.openrouter_model import OpenRouterModel


class ScriptedModel(OpenRouterModel):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._api_url = os.environ["SCRIPTED_MODEL_URL"] + "/v1/chat/completions"
