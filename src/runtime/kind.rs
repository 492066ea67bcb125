//! The runtime kinds and the shape of a table row, as in threadpoolctl: each
//! kind's module (`openmp`, `openblas`, `mkl`, `blis`, `flexiblas`) lists its
//! rows; `table` gathers them.

use core::ffi::CStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    Libgomp,
    Libomp,
    Libiomp,
    Openblas,
    Mkl,
    Blis,
    Flexiblas,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Openmp,
    Blas,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Libgomp => "libgomp",
            Impl::Libomp => "libomp",
            Impl::Libiomp => "libiomp",
            Impl::Openblas => "openblas",
            Impl::Mkl => "mkl",
            Impl::Blis => "blis",
            Impl::Flexiblas => "flexiblas",
        }
    }
    pub fn kind(self) -> Kind {
        match self {
            Impl::Libgomp | Impl::Libomp | Impl::Libiomp => Kind::Openmp,
            _ => Kind::Blas,
        }
    }
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Openmp => "openmp",
            Kind::Blas => "blas",
        }
    }
}

/// One runtime kind's table row, as in threadpoolctl: file-name prefixes,
/// symbols that confirm it, its get/set thread-count functions and, where the
/// kind has one, its threading-model query (the first name present wins).
pub struct Row {
    pub imp: Impl,
    pub prefixes: &'static [&'static str],
    pub confirm: &'static [&'static CStr],
    pub get: &'static [&'static CStr],
    pub set: &'static [&'static CStr],
    pub model: &'static [&'static CStr],
}
