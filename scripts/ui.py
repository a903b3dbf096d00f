"""``make ui``: the MLflow UI and the Airflow UI on loopback, over the embedded default's stores.

MLflow: http://127.0.0.1:5000 (the registry, runs, the staged version's report).
Airflow: http://127.0.0.1:8080 (``airflow standalone``: api-server, scheduler, dag-processor, triggerer; the
admin password is printed by Airflow and kept in ``var/airflow/simple_auth_manager_passwords.json.generated``).
Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from scripts.dag_runner import REPO, prepare_airflow


def main() -> int:
    prepare_airflow(REPO / "var" / "airflow")
    from pipelines.config import get_settings

    settings = get_settings()
    env = os.environ.copy()
    env.update({"AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": "8080"})
    # `airflow standalone` starts its components as `airflow ...` from PATH: put this venv's bin first.
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                "5000",
                "--backend-store-uri",
                settings.mlflow.tracking_uri,
                "--workers",
                "1",
            ],
            env=env,
        ),
        subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=env),
    ]
    print("MLflow UI:  http://127.0.0.1:5000\nAirflow UI: http://127.0.0.1:8080  (Ctrl-C stops both)", flush=True)
    try:
        procs[0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
