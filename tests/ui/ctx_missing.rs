use flow_runtime::prelude::*;

#[flow]
async fn lonely(peer: Party) -> Result<(), FlowError> {
    let _ = peer;
    Ok(())
}

fn main() {}
