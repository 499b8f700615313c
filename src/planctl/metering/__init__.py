"""The metering engine as one object (`Meter`): what the gateway calls for every request.

    meter = Meter.open(target)
    adm = meter.admit(secret, "gpt-5.4", "responses", reserve=40_000)
    if adm.allowed:
        ...  # forward
        meter.settle(adm, Usage(input_tokens=..., output_tokens=..., status_code=200))
    meter.close()

Plain synchronous Python, safe to call from many threads (each thread uses its own driver
connection), printing nothing. It runs on the functions of services/metering.py.
"""

from planctl.metering.meter import Admission, Meter, Usage

__all__ = ["Admission", "Meter", "Usage"]
