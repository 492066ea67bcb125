/* A shared library with OpenMP regions, loaded by Python through ctypes. */
#include <omp.h>

int fix_team(int clause) {
    int team = 0;
    if (clause > 0) {
#pragma omp parallel num_threads(clause)
        {
#pragma omp single
            team = omp_get_num_threads();
        }
    } else {
#pragma omp parallel
        {
#pragma omp single
            team = omp_get_num_threads();
        }
    }
    return team;
}

void fix_set(int n) { omp_set_num_threads(n); }

int fix_max(void) { return omp_get_max_threads(); }

/* n short regions: a reduction over len doubles each; returns the sum of team sizes. */
long fix_regions(int n, int len) {
    static double buf[1 << 16];
    long teams = 0;
    if (len > (1 << 16)) len = 1 << 16;
    for (int r = 0; r < n; r++) {
        double s = 0;
        int t = 0;
#pragma omp parallel for reduction(+ : s)
        for (int i = 0; i < len; i++) {
            s += buf[i] + i;
            if (i == 0) t = omp_get_num_threads();
        }
        teams += t;
        buf[r % len] = s * 1e-30;
    }
    return teams;
}
