//! Process-wide setup shared by the Lambda functions and the local runner.

pub mod heap;
