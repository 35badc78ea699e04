use flow_runtime::prelude::*;

async fn fetch(s: &FlowSession) -> u32 {
    let _ = s;
    1
}

#[flow]
async fn caller(ctx: &mut FlowContext, s: FlowSession) -> Result<u32, FlowError> {
    let n = fetch(&s).await;
    Ok(n)
}

fn main() {}
