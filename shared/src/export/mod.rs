//! Export use cases without HTTP: parsing a request, admission, resolving
//! Group members, starting and scheduling exports, building the manifest.

pub mod admission;
pub mod file_links;
pub mod group;
pub mod manifest;
pub mod request;
pub mod schedule;
pub mod start;
