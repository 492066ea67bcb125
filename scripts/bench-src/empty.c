/* The "preload" configuration of scripts/bench LD_PRELOADs this empty library (built as target/bench/libempty.so): the cost of preloading anything at all. */
void parbudget_bench_empty(void) {}
