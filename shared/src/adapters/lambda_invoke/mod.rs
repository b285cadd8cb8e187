//! Lambda continuation: the chunk-worker invokes itself asynchronously.

use crate::model::StepEvent;
use crate::ports::continuation::{Continuation, ContinuationError};
use async_trait::async_trait;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;

/// Invokes a function with `InvocationType::Event` and the step as payload.
#[derive(Clone)]
pub struct LambdaContinuation {
    client: aws_sdk_lambda::Client,
    function_name: String,
}

impl LambdaContinuation {
    /// Continuation invoking `function_name`.
    pub fn new(client: aws_sdk_lambda::Client, function_name: impl Into<String>) -> Self {
        Self {
            client,
            function_name: function_name.into(),
        }
    }
}

#[async_trait]
impl Continuation for LambdaContinuation {
    async fn schedule(&self, event: StepEvent) -> Result<(), ContinuationError> {
        let payload = serde_json::to_vec(&event).map_err(|e| ContinuationError(e.to_string()))?;
        self.client
            .invoke()
            .function_name(&self.function_name)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload))
            .send()
            .await
            .map_err(|e| ContinuationError(format!("{e:?}").chars().take(300).collect()))?;
        Ok(())
    }
}
