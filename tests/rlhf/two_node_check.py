"""Two simulated Ray nodes (ray.cluster_utils.Cluster): actors SPREAD over both and one GRPO step completes.

python -m tests.rlhf.two_node_check TINY_MODEL_DIR OUTPUT_DIR      (own process: its own Ray cluster)
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster

from rlhf.config import load_config
from rlhf.placement import create_actors, release
from rlhf.trainer import fit


def main() -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    overrides = [f"policy.base_model={sys.argv[1]}", f"run.output_dir={sys.argv[2]}", "placement.colocate=false",
                 "learner.num_learners=2", "run.steps=1", "placement.torch_threads=1"]  # fmt: skip
    cfg = load_config("configs/tiny_test.yaml", overrides)
    actors = create_actors(cfg)
    nodes = ray.get([a.node_id.remote() for a in actors.learners + actors.rollouts])
    release(actors)
    run_dir = fit(cfg)
    steps = len((run_dir / "metrics.jsonl").read_text().splitlines())
    print(json.dumps({"nodes": sorted(set(nodes)), "cluster_nodes": len(ray.nodes()), "steps": steps}))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
