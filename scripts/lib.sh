# Shared by the scripts that test a built `wxpay` from outside (conformance, schemathesis, the
# browser test); sourced, not run. Each function names its caller's NAME in its messages.

# Nothing named WXPAY_* reaches the servers a script starts: a developer's
# WXPAY_DATABASE_URL or WXPAY_CONFIG would point them at a real database or configuration.
clear_wxpay_vars() {
    local name
    for name in "${!WXPAY_@}"; do
        unset "$name"
    done
}

# need_binary NAME BIN: stops the script when BIN is not built (the scripts never build it).
need_binary() {
    if [[ ! -x "$2" ]]; then
        echo "$1: $2 is not an executable; build it first (cargo build -q -p wxpay-cli) or set WXPAY_BIN" >&2
        exit 2
    fi
}

# python_venv NAME VENV REQUIREMENTS [PYTHON]: makes VENV from the pinned REQUIREMENTS, or
# reuses it while the requirements and the interpreter are unchanged.
python_venv() {
    local name=$1 venv=$2 requirements=$3 python=${4:-python3} stamp
    stamp="$(sha256sum "$requirements" | cut -d' ' -f1) $("$python" -c 'import sys; print(sys.version.split()[0])')"
    if [[ -x "$venv/bin/python" && -f "$venv/.requirements-stamp" && "$(cat "$venv/.requirements-stamp")" == "$stamp" ]]; then
        echo "$name: reusing $venv"
        return
    fi
    echo "$name: creating $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements"
    "$venv/bin/python" -m pip check --disable-pip-version-check
    echo "$stamp" >"$venv/.requirements-stamp"
}

# start_demo NAME BIN PORT DIR: starts `wxpay demo` on 127.0.0.1:PORT with DIR as its data
# directory and its output in DIR.log, stopped when the script exits, and waits until it is
# ready. Sets DEMO_TOKEN (the API token it printed) and DEMO_PASSWORD (the console's).
start_demo() {
    local name=$1 bin=$2 port=$3 dir=$4 line="" ready=""
    "$bin" demo --listen "127.0.0.1:$port" --data-dir "$dir" >"$dir.log" 2>&1 &
    DEMO_PID=$!
    trap 'kill $DEMO_PID 2>/dev/null || true; wait $DEMO_PID 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        line=$(grep -m1 '^console: ' "$dir.log" || true)
        if [[ -n "$line" ]] && curl -sf -o /dev/null "http://127.0.0.1:$port/readyz"; then
            ready=1
            break
        fi
        sleep 0.1
    done
    if [[ -z "$ready" ]]; then
        echo "$name: the demo did not start:" >&2
        cat "$dir.log" >&2
        exit 1
    fi
    # `console: <base>/console password: <password>`, and the token on the API's line.
    DEMO_PASSWORD=${line##* }
    DEMO_TOKEN=$(grep -o 'Bearer demo_[0-9a-f]*' "$dir.log" | head -1 | cut -d' ' -f2)
}
