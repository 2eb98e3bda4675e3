def test_worker_ping(worker, celery_app):
    res = celery_app.send_task("vigil.admin.ping").get(timeout=30)
    assert res["status"] == "ok", res
    assert all(c["ok"] for c in res["checks"].values()), res
