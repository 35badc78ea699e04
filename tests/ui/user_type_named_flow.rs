use flow_runtime::prelude::*;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Flow {
    pub steps: u32,
}

#[flow]
async fn uses_it(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let plan: Flow = Flow { steps: 2 };
    let n: u32 = s.receive::<u32>().await?.validate(Ok)?;
    Ok(plan.steps + n)
}

fn main() {}
