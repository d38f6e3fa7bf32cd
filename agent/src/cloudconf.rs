//! The CoAPCloudConf resource's backend (OCF-PROTOCOL.md §4): a thin adapter from the resource
//! tree to the cloud controller. The rules (representation without `at`, update validation,
//! `{"cis":""}`) are in the sans-IO core, [`ocf::cloud::resource`].

use std::rc::Rc;

use ocf::cloud::resource::{policy, HREF, INTERFACES, RT};
use ocf::resource::{Backend, Props, Resource, ResourceError};

use crate::cloud::Cloud;

/// Serves `/CoapCloudConfResURI` from the cloud controller.
pub struct CloudConfBackend {
    cloud: Rc<Cloud>,
}

impl CloudConfBackend {
    /// The resource (rt `oic.r.coapcloudconf`, `oic.if.rw` + `oic.if.baseline`, discoverable
    /// and observable) backed by `cloud`.
    pub fn resource(cloud: Rc<Cloud>) -> Resource {
        Resource::new(
            HREF,
            &[RT],
            &INTERFACES,
            policy(),
            Box::new(CloudConfBackend { cloud }),
        )
    }
}

impl Backend for CloudConfBackend {
    fn retrieve(&mut self) -> Result<Props, ResourceError> {
        self.cloud.representation()
    }

    fn update(&mut self, props: &Props) -> Result<(), ResourceError> {
        self.cloud.configure(props)
    }
}
