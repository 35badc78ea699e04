use flow_runtime::prelude::*;

#[flow]
async fn mapped(ctx: &mut FlowContext, s: FlowSession) -> Result<Vec<u32>, FlowError> {
    let out: Vec<u32> = (0..3u32)
        .map(|_| async { s.receive::<u32>().await })
        .map(|_| 1)
        .collect();
    let f = || s.receive::<u32>().await;
    Ok(out)
}

fn main() {}
