"""Named actors and how every part finds them: the cluster's state actor and each job's coordinator.

Fetchers, coordinators and the API import this instead of ``prewarm.engine.state``, so an actor process does
not load pandas and boto3 just to look up a handle: that keeps a job's actor start-up short.
"""

from __future__ import annotations

import ray

from prewarm.settings import STATE_ACTOR_NAME, Settings


def head_node_id() -> str | None:
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return node["NodeID"]
    return None


def get_state_actor(settings: Settings) -> ray.actor.ActorHandle:
    """The cluster's state actor, which the API created (``engine.state.ensure_state_actor``)."""
    return ray.get_actor(STATE_ACTOR_NAME, namespace=settings.namespace)


def coordinator_alive(req_id: str, namespace: str) -> bool:
    """Whether the job's coordinator actor exists (alive or being restarted)."""
    try:
        ray.get_actor(coordinator_name(req_id), namespace=namespace)
    except ValueError:
        return False
    return True


def kill_coordinator(req_id: str, namespace: str) -> bool:
    """Kill a job's coordinator for good (its fetchers die with it); False if it was already gone."""
    try:
        ray.kill(ray.get_actor(coordinator_name(req_id), namespace=namespace), no_restart=True)
        return True
    except ValueError:
        return False


def coordinator_name(req_id: str) -> str:
    return f"prewarm-coordinator-{req_id}"
