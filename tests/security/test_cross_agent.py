"""Cross-agent attempts against a real scheduler: an agent's token never acts for another.

tests/control/test_auth.py holds the fixed auth matrix over fake tools; here hypothesis draws
(token, target agent, route, body) against a real :class:`Scheduler` over a real journal
(SQLite and PostgreSQL), and every attempt must be refused (401 for a forged token, 403
for another agent's) with no journal row written and no slot changed.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calsched.tokens import agent_token
from tests.security.rig import ADMIN, AGENT_ROUTES, AGENTS, control_rig, token_of

OTHER_SECRET = b"not-the-daemon-secret-0123456789abcdef"
EXAMPLES = 150


def _forged(target: str, how: str) -> str:
    """A token for ``target`` made without the daemon's secret."""
    genuine = token_of(target)
    if how == "other secret":
        return agent_token(OTHER_SECRET, target)
    if how == "tampered mac":
        head, _, mac = genuine.rpartition(".")
        return f"{head}.{mac[::-1]}"
    if how == "swapped agent":
        # Another agent's MAC under the target's name.
        _, _, mac = token_of("mallory").rpartition(".")
        name = base64.urlsafe_b64encode(target.encode()).rstrip(b"=").decode()
        return f"agent.{name}.{mac}"
    return genuine.replace("agent.", "admin.", 1)  # "admin prefix"


bodies = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(["summary", "reason", "slot_id", "agent_id", "admin"]),
        st.one_of(st.text(max_size=20), st.sampled_from([f"s-{a}" for a in AGENTS]), st.none()),
        max_size=3,
    ),
)

attempts = st.one_of(
    # A genuine token of one agent on another agent's routes: 403.
    st.tuples(
        st.just(403),
        st.sampled_from([*AGENTS, "mallory", "alice ", "ALICE"]),
        st.sampled_from(AGENTS),
    ).filter(lambda t: t[1] != t[2]),
    # A forged token naming the target itself: 401.
    st.tuples(
        st.just(401),
        st.sampled_from(["other secret", "tampered mac", "swapped agent", "admin prefix"]),
        st.sampled_from(AGENTS),
    ),
)


def test_cross_agent_attempts_never_succeed(db_url: str) -> None:
    """Hypothesis' cross-agent attempts: every one refused, no row written, no slot moved."""
    tried = {"attempts": 0, "successes": 0}
    with asyncio.Runner() as runner:
        rig_cm = control_rig(db_url)
        rig = runner.run(rig_cm.__aenter__())
        try:
            before, states = rig.rows(), rig.states()

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
            )
            @given(attempt=attempts, route=st.sampled_from(AGENT_ROUTES), body=bodies)
            def attempt_once(
                attempt: tuple[int, str, str], route: tuple[str, str], body: dict[str, Any] | None
            ) -> None:
                expected, who, target = attempt
                token = token_of(who) if expected == 403 else _forged(target, who)
                method, suffix = route
                path = f"/v1/agents/{target}/slot{suffix}"
                content = None if body is None or method == "GET" else json.dumps(body)
                response = runner.run(
                    rig.http.request(
                        method,
                        path,
                        content=content,
                        headers={"authorization": f"Bearer {token}"},
                    )
                )
                tried["attempts"] += 1
                tried["successes"] += response.is_success
                assert response.status_code == expected, (who, path, response.text)
                assert rig.rows() == before
                assert rig.states() == states

            attempt_once()
            # The rig is live: the admin and the owner still act (the refusals were not
            # an artefact of a broken scheduler).
            ok = runner.run(
                rig.http.get("/v1/agents/alice/slot", headers={"authorization": f"Bearer {ADMIN}"})
            )
            assert ok.status_code == 200
            done = runner.run(
                rig.http.post(
                    "/v1/agents/bob/slot/complete",
                    headers={"authorization": f"Bearer {token_of('bob')}"},
                )
            )
            assert done.status_code == 200
            assert rig.rows() != before
        finally:
            runner.run(rig_cm.__aexit__(None, None, None))
    print(f"\ncross-agent attempts tried {tried['attempts']}, succeeded {tried['successes']}")
    assert tried["successes"] == 0
