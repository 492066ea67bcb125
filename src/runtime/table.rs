//! Every runtime kind's table rows, and which row a file name belongs to.

use super::kind::Row;

pub fn rows() -> impl Iterator<Item = &'static Row> {
    super::openmp::ROWS
        .iter()
        .chain(super::openblas::ROWS)
        .chain(super::mkl::ROWS)
        .chain(super::blis::ROWS)
        .chain(super::flexiblas::ROWS)
}

/// Which row a file name belongs to, by the prefix of its base name.
pub fn row_for_path(path: &[u8]) -> Option<&'static Row> {
    let base = match path.iter().rposition(|b| *b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    };
    rows().find(|r| r.prefixes.iter().any(|p| base.starts_with(p.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::kind::Impl;

    #[test]
    fn prefixes_pick_rows() {
        let imp = |p: &str| row_for_path(p.as_bytes()).map(|r| r.imp);
        assert_eq!(
            imp("/usr/lib/x86_64-linux-gnu/libgomp.so.1"),
            Some(Impl::Libgomp)
        );
        assert_eq!(
            imp("/v/scikit_learn.libs/libgomp-a34b3233.so.1.0.0"),
            Some(Impl::Libgomp)
        );
        assert_eq!(imp("/usr/lib/llvm-14/lib/libomp.so.5"), Some(Impl::Libomp));
        assert_eq!(imp("/v/lib/libiomp5.so"), Some(Impl::Libiomp));
        assert_eq!(
            imp("/v/numpy.libs/libscipy_openblas64_-ff651d7f.so"),
            Some(Impl::Openblas)
        );
        assert_eq!(
            imp("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"),
            Some(Impl::Openblas)
        );
        assert_eq!(imp("/opt/intel/lib/libmkl_rt.so.2"), Some(Impl::Mkl));
        assert_eq!(imp("/usr/lib/libblis.so.4"), Some(Impl::Blis));
        assert_eq!(imp("/usr/lib/libflexiblas.so.3"), Some(Impl::Flexiblas));
        assert_eq!(imp("/usr/lib/libgompfoo/libc.so.6"), None);
        assert_eq!(imp("/usr/lib/libompressor.so"), Some(Impl::Libomp)); // confirmed later by symbols
    }
}
