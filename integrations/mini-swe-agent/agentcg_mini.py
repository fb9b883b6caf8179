"""mini-swe-agent environment that runs every command as an agentcg call.

Each command the model issues runs as ``agentcg shell -c COMMAND`` in one agentcg
session (created when the environment is, with this Python process, the agent, as its
runtime), so it gets its own cgroup, sized from an intent the model writes in front of
it (``AGENTCG_INTENT=mem.max=2G pytest``) or from its class, and when a limit ends it,
agentcg's feedback line is part of the output the model reads.

Use: put this directory on PYTHONPATH and run
``mini --environment-class agentcg_mini.AgentcgEnvironment ...``, or set
``environment.environment_class: agentcg_mini.AgentcgEnvironment`` in a config file.
Options (config keys under ``environment``): ``session`` (default ``mini-<pid>``),
``session_memory`` (e.g. ``4G``), ``session_priority``, ``agentcg`` (the CLI's path) and
``socket`` (agentcgd's socket; default: ``$AGENTCG_SOCKET``, else agentcg's default).
"""

import os
import shlex
import subprocess
from typing import Any

from minisweagent.environments.local import LocalEnvironment, LocalEnvironmentConfig


class AgentcgEnvironmentConfig(LocalEnvironmentConfig):
    session: str = ""
    session_memory: str = ""
    session_priority: str = ""
    agentcg: str = "agentcg"
    socket: str = ""


class AgentcgEnvironment(LocalEnvironment):
    def __init__(self, *, config_class: type = AgentcgEnvironmentConfig, **kwargs):
        super().__init__(config_class=config_class, **kwargs)
        self.session = self.config.session or f"mini-{os.getpid()}"
        self._create_session()

    def _cli(self) -> list[str]:
        socket = self.config.socket or os.environ.get("AGENTCG_SOCKET", "")
        return [self.config.agentcg] + (["--socket", socket] if socket else [])

    def _create_session(self) -> None:
        argv = self._cli() + ["session", "create", self.session, "--runtime-pid", str(os.getpid())]
        if self.config.session_memory:
            argv += ["--memory", self.config.session_memory]
        if self.config.session_priority:
            argv += ["--priority", self.config.session_priority]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0 and "already exists" not in done.stderr:
            raise RuntimeError(f"agentcg could not create session {self.session}: {done.stderr.strip()}")

    def execute(self, action: dict, cwd: str = "", *, timeout: int | None = None) -> dict[str, Any]:
        command = action.get("command", "")
        through = shlex.join(self._cli() + ["shell", "-c", command])
        env = self.config.env | {"AGENTCG_SESSION": self.session}
        saved, self.config.env = self.config.env, env
        try:
            return super().execute({**action, "command": through}, cwd, timeout=timeout)
        finally:
            self.config.env = saved

    def serialize(self) -> dict:
        out = super().serialize()
        out["info"]["config"]["environment"]["agentcg_session"] = self.session
        return out
