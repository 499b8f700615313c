"""The metering engine, and `Meter`, the one object its callers use (the gateway for every
request, and the CLI's `authorize`, `usage record`, `usage import`, `reservations` and
`limits` commands):

    meter = Meter.open(target)
    adm = meter.admit(secret, "gpt-5.4", "responses", reserve=40_000)
    if adm.allowed:
        ...  # forward
        meter.settle(adm, Usage(input_tokens=..., output_tokens=..., status_code=200))
    meter.close()

Plain synchronous Python, safe to call from many threads (each thread uses its own driver
connection), printing nothing. One job per module, each running on `store.sql` and
`store.meter` (plain driver transactions, not the ORM: it runs for every request):

    meter       Meter: owns the database, the catalog cache, the clock and the hold timeout
    catalog     the catalog (models, aliases, ratios, settings, plan terms), cached per stamp
    state       a key's state at one instant: rows, terms, windows, counters
    admission   authorize: the decision, its answer, and the hold it takes
    changes     the unit of work: rows moved in place, written as increments
    holds       holding credit, and every way a hold ends (settled, released, expired)
    recording   UsageInput, validate, record, and the Batch writer record and import share
    rollups     usage records summed into daily rollup rows
    importing   import_usage: many records in batches, with their report
    limits      the limits view (`limits show`) and the periodic-limit switch
"""

from planctl.metering.meter import Admission, Meter, Usage

__all__ = ["Admission", "Meter", "Usage"]
