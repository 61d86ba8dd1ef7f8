"""An upstream as the request path sees it: a frozen snapshot of a row (its key unsealed), or the default
upstream of `OPENAI_API_KEY`/`OPENAI_BASE_URL` when no row exists. Knows its URLs and its auth headers."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson

from .models import UpstreamKind

DEFAULT_NAME = "default"
# Azure's deployment-style routes (`/openai/deployments/{deployment}/chat/completions?api-version=`): the
# endpoints that take a deployment; the others (responses, conversations, ...) are `/openai/...?api-version=`.
AZURE_DEPLOYMENT_PATHS = frozenset({"/chat/completions", "/completions", "/embeddings"})


@dataclass(frozen=True, slots=True, eq=False)
class Target:
    name: str
    kind: str
    base_url: str
    api_key: str = field(repr=False)
    organization: str = ""
    project: str = ""
    api_version: str = ""
    weight: int = 1
    priority: int = 0
    models: frozenset = frozenset()
    aliases: Mapping[str, str] = field(default_factory=dict)
    rpm: int | None = None
    tpm: int | None = None
    version: str = ""  # changes whenever the row does: a new client is built for it
    is_default: bool = False

    @property
    def serves_all(self) -> bool:
        return not self.models and not self.aliases

    def serves(self, model: str) -> bool:
        return self.serves_all or model in self.models or model in self.aliases

    def public_models(self) -> set[str]:
        return set(self.models) | set(self.aliases)

    def upstream_model(self, model: str) -> str:
        """The model (or Azure deployment) this upstream knows the public `model` as."""
        return self.aliases.get(model, model)

    def client_base_url(self) -> str:
        """What the SDK client of this upstream is given as `base_url`."""
        if self.kind == UpstreamKind.AZURE:
            return self.base_url.rstrip("/") + "/openai"
        return self.base_url

    def auth_headers(self) -> dict[str, str]:
        """The credentials and account headers this upstream is sent (Azure: `api-key`, no Authorization)."""
        if self.kind == UpstreamKind.AZURE:
            return {"api-key": self.api_key}
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        if self.project:
            headers["OpenAI-Project"] = self.project
        return headers

    def locate(self, path: str, query: str, model: str) -> tuple[str, str]:
        """The path (under `client_base_url()`) and query that `path` (`/chat/completions`) takes here.

        Azure without an API version: its v1 API (`/openai/v1/chat/completions`, the deployment as `model`).
        With one: the deployment URL for chat, completions and embeddings, else the path, `?api-version=V`."""
        if self.kind != UpstreamKind.AZURE:
            return path, query
        if not self.api_version:
            return "/v1" + path, query
        version = f"api-version={self.api_version}"
        query = f"{query}&{version}" if query else version
        if path in AZURE_DEPLOYMENT_PATHS and model:
            return f"/deployments/{self.upstream_model(model)}{path}", query
        return path, query

    def body_for(self, body: bytes, model: str) -> bytes:
        """`body` with its `model` replaced by this upstream's name for it (unchanged when it is the same)."""
        if not model or not body:
            return body
        upstream_model = self.aliases.get(model)
        if upstream_model is None or upstream_model == model:
            return body
        data = orjson.loads(body)
        data["model"] = upstream_model
        return orjson.dumps(data)
