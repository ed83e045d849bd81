"""Names that are the least event-specific in international news: countries, their
adjectives and capitals (in English and the spellings of a few other languages), and
capitalized words of titles and institutions (Ministry, Foreign, Security). Folded like
anchors. The cross-lingual stage weighs these lower than other names: two reports that
share only "Japan", "China" and "Ministry" share a subject, not an event.

This is a prior for a database that has few items; with many, rarity (document
frequency) learns the same and more. Pure data.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


PLACES = _words("""
afghanistan afghan albania algeria andorra angola argentina armenia australia austria
azerbaijan bahamas bahrain bangladesh barbados belarus belgium belize benin bhutan bolivia
bosnia botswana brazil brunei bulgaria burkina burundi cambodia cameroon canada chad chile
china colombia comoros congo costa croatia cuba cyprus czech czechia denmark djibouti
dominica dominican ecuador egypt salvador eritrea estonia eswatini ethiopia fiji finland
france gabon gambia georgia germany ghana greece grenada guatemala guinea guyana haiti
honduras hungary iceland india indonesia iran iraq ireland israel italy jamaica japan
jordan kazakhstan kenya kiribati korea kosovo kuwait kyrgyzstan laos latvia lebanon lesotho
liberia libya liechtenstein lithuania luxembourg madagascar malawi malaysia maldives mali
malta mauritania mauritius mexico micronesia moldova monaco mongolia montenegro morocco
mozambique myanmar namibia nauru nepal netherlands zealand nicaragua niger nigeria
macedonia norway oman pakistan palau palestine panama papua paraguay peru philippines
poland portugal qatar romania russia rwanda samoa marino saudi senegal serbia seychelles
sierra leone singapore slovakia slovenia solomon somalia africa sudan spain sri lanka
suriname sweden switzerland syria taiwan tajikistan tanzania thailand timor togo tonga
trinidad tobago tunisia turkey turkiye turkmenistan tuvalu uganda ukraine emirates
britain kingdom uk us usa america uruguay uzbekistan vanuatu vatican venezuela vietnam
yemen zambia zimbabwe europe asia pacific indopacific asiapacific middle east west north
south arctic atlantic eu nato un asean
american british chinese japanese russian ukrainian turkish german french italian spanish
indian korean european asian african australian canadian israeli iranian iraqi syrian
pakistani afghan filipino indonesian malaysian vietnamese thai taiwanese norwegian swedish
danish finnish polish dutch belgian swiss austrian greek brazilian mexican
tyrkia tyrkias tyrkisk tyrkiske japans japansk japanske kina kinas kinesisk kinesiske
russland russlands russisk
ukraina ukrainas ukrainsk norge norges norsk norske usas europas sverige danmark tyskland
frankrike england storbritannia hong kong
turkei japon chine chinois russie allemagne espagne etatsunis
washington beijing tokyo moscow kyiv kiev london paris berlin brussels oslo stockholm
ankara istanbul seoul delhi newdelhi manila jakarta bangkok hanoi canberra ottawa
""")

TITLES = _words("""
ministry minister ministers foreign affairs defense defence security official officials
government department national international president prime chancellor secretary
general agency council committee commission parliament congress senate house office
authority forces force army navy air self selfdefense military police court supreme
university school institute center centre corporation corp company group industries
industry association union party federation republic kingdom state states united
news times post daily journal herald press media agency tv radio reuters afp ap
ntb nrk bbc cnn kyodo nikkei anadolu xinhua tass dpa efe ansa yonhap
twitter facebook instagram youtube tiktok telegram x
program programme assistance development cooperation
""")
