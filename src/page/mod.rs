//! The buddy page allocator (placeholder: being written).
mod desc;
#[allow(unused_imports)]
pub(crate) use desc::{Page, PageInfo, PageKind};
