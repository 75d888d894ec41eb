"""The seed's stack for comparison: a minimal FastAPI app served by uvicorn, with the same
/ping, /queue/status and /generate/queue endpoints over an in-memory queue (nothing is
durable; a restart loses every job).  Run: python3 tests/bench/seed_app.py PORT"""
import collections
import sys
import time
import uuid

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

app = FastAPI()
jobs = {}
queue = collections.deque()
CAPACITY = 10 ** 9


class Request(BaseModel):
    prompt: str
    guidance_scale: float = 3.5
    num_inference_steps: int = 28
    width: int = 1024
    height: int = 1024
    seed: int | None = None


@app.get("/ping")
def ping():
    return {"status": "ok", "ready": True, "model": "none", "device": "cpu"}


@app.get("/queue/status")
def queue_status():
    counts = collections.Counter(j["status"] for j in jobs.values())
    return {"queued": counts["queued"], "running": counts["running"],
            "completed": counts["completed"], "failed": counts["failed"],
            "capacity": CAPACITY}


@app.post("/generate/queue", status_code=202)
def generate_queue(req: Request):
    rid = uuid.uuid4().hex
    jobs[rid] = {"status": "queued", "params": req.dict(), "created": time.time()}
    queue.append(rid)
    return JSONResponse({"request_id": rid, "status": "queued", "position": len(queue)},
                        status_code=202, headers={"Location": "/queue/status/" + rid})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False)
