use flow_runtime::prelude::*;

#[flow]
async fn guarded(ctx: &mut FlowContext, s: FlowSession, n: u32) -> Result<u32, FlowError> {
    match n {
        0 if s.receive::<bool>().await?.validate(Ok)? => Ok(1),
        _ => Ok(2),
    }
}

fn main() {}
