#!/bin/sh
# The time from an unhealthy deployment being live to the previous version serving again,
# measured against the fake API with its build steps set to zero (the platform's build time is
# excluded), over 5 rounds: prints min, median and max.
set -eu
cd "$(dirname "$0")/.."
exec cargo test --test e2e verify::rollback_time -- --ignored --nocapture
