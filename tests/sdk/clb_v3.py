"""Drives the CLB emulator's API 3.0 face with Tencent's own Python SDK (tencentcloud-sdk-python-clb), so the
emulator's signature checks are proven against a signer this project did not write.

usage: clb_v3.py ENDPOINT SECRET_ID SECRET_KEY LB LISTENER INSTANCE PORT
Prints one JSON line of what happened; exits non-zero on any unexpected answer.
"""
import json
import sys
import time

from tencentcloud.clb.v20180317 import clb_client, models
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile


def client(endpoint, secret_id, secret_key, method="POST"):
    http = HttpProfile(protocol="http", endpoint=endpoint, reqMethod=method)
    return clb_client.ClbClient(credential.Credential(secret_id, secret_key), "ap-guangzhou", ClientProfile(httpProfile=http))


def wait(c, request_id):
    for _ in range(100):
        req = models.DescribeTaskStatusRequest()
        req.TaskId = request_id
        status = c.DescribeTaskStatus(req).Status
        if status != 2:
            return status
        time.sleep(0.05)
    raise SystemExit(f"task {request_id} still running")


def targets(c, lb, listener):
    req = models.DescribeTargetsRequest()
    req.LoadBalancerId = lb
    req.ListenerIds = [listener]
    listeners = c.DescribeTargets(req).Listeners
    return [(t.InstanceId, t.Port) for l in listeners for t in (l.Targets or [])]


def main():
    endpoint, secret_id, secret_key, lb, listener, instance, port = sys.argv[1:8]
    c = client(endpoint, secret_id, secret_key)
    target = models.Target()
    target.InstanceId, target.Port, target.Weight = instance, int(port), 10
    reg = models.RegisterTargetsRequest()
    reg.LoadBalancerId, reg.ListenerId, reg.Targets = lb, listener, [target]
    registered = wait(c, c.RegisterTargets(reg).RequestId)
    after_register = targets(c, lb, listener)
    # The same read by GET: the SDK signs its own query string (ListenerIds.0=...), which the emulator hashes
    # as received.
    after_register_get = targets(client(endpoint, secret_id, secret_key, "GET"), lb, listener)
    dereg = models.DeregisterTargetsRequest()
    dereg.LoadBalancerId, dereg.ListenerId, dereg.Targets = lb, listener, [target]
    deregistered = wait(c, c.DeregisterTargets(dereg).RequestId)
    after_deregister = targets(c, lb, listener)
    try:
        client(endpoint, secret_id, secret_key + "x").DescribeTargets(models.DescribeTargetsRequest())
        wrong_key = "accepted"
    except TencentCloudSDKException as e:
        wrong_key = e.get_code()
    print(json.dumps({
        "registered": registered, "after_register": after_register, "after_register_get": after_register_get,
        "deregistered": deregistered, "after_deregister": after_deregister, "wrong_key": wrong_key,
    }))


if __name__ == "__main__":
    main()
