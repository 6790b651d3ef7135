# Shortcuts; each target is one script in scripts/ (read it for what it does).
.PHONY: run test bench bench-short bench-container reliability reliability-short container-test

run:                ## install and sign in with the login program
	scripts/run

test:               ## everything CI runs (what .ci/run runs)
	scripts/test

bench:              ## all benchmarks, full runs -> BENCHMARKS.md (about 25 minutes)
	scripts/install --test
	.venv/bin/python scripts/bench.py

bench-short:        ## the same, a few runs each: checks they still work
	scripts/install --test
	.venv/bin/python scripts/bench.py --short

bench-container:    ## the service's memory inside the container (the image container-test built)
	scripts/install --test
	CONTAINERS_CONF=$(CURDIR)/.ci/containers.conf .venv/bin/python scripts/bench_container.py \
		--image localhost/chatgpt-login:dev --runs 3

reliability:        ## the reliability suite, full -> RELIABILITY.md (about an hour)
	scripts/install --test
	.venv/bin/python scripts/reliability.py

reliability-short:  ## the same in its short mode
	scripts/install --test
	.venv/bin/python scripts/reliability.py --short

container-test:     ## build the image with podman and run the container story
	scripts/container-test
