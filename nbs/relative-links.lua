-- Links to the course's own pages are relative, so that the site works wherever it is served: a preview, a fork's
-- GitHub Pages, a copy on disk. nbdev turns every backticked name of the library (`generate`, `NoiseSchedule.q_sample`)
-- into a link to its documentation at the published site's absolute address (doc_host and doc_baseurl, which
-- sdcourse/_modidx.py records from pyproject.toml's Documentation URL). Every page sits at the site's top level, so
-- what follows that address is a relative link from any page. tests/test_site.py checks that `site` is the address
-- nbdev writes, and that every such link lands on a page and a heading that exist.
local site = "https://sdcourse.github.io/sdcourse/"

function Link(link)
  if link.target:sub(1, #site) == site then
    local page = link.target:sub(#site + 1)
    if page == "" or page:sub(1, 1) == "#" then page = "index.html" .. page end
    link.target = page
  end
  return link
end
